"""The Prefect code: the two flows, their tasks, artifacts, Secret blocks and shared limits.

sync             flow `invoice-sync`: one decision file, read -> validate -> plan -> send -> results
dispatch         a client per vendor, chunks as tasks, a few in flight per vendor
inbox            flow `process-inbox`: claim dropped files, run `invoice-sync` on each, file them away
artifacts        what a run shows in the Prefect UI
progress         rows done per vendor (terminal bars, progress artifact)
secrets          vendor settings as Prefect Secret blocks
shared_limits    a vendor's rate shared by all workers (a global concurrency limit)
temporary_server Prefect's temporary API server, launched early by the command
events           the run-finished event the alerts and the retries react to
alerts           the notification block and the automations (`invoice-sync alerts`)
retry            flow `retry-failed`: transient failures sent again, in rounds
stopping         SIGINT / SIGTERM set the run's stop; a second one leaves at once
"""
