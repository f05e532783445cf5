"""Everything that is not a vendor: the pipeline, its state, the Prefect flows and the command.

    pipeline/       pure stages, plain functions: read, validate, plan, assemble and write results
    state/          what outlives a run: the ledger, the inbox folder's claims
    orchestration/  the Prefect code: flows, tasks, artifacts, Secret blocks, shared limits
    cli/            the `invoice-sync` command

Imports run one way: cli -> orchestration -> (pipeline, state) -> connectors.vocabulary.
"""
