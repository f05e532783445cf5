"""The pipeline's pure stages: plain functions over frames and files, no Prefect and no HTTP.

reader      a decision file (CSV, Parquet) -> a normalised frame of text
validation  the Great Expectations suite -> which rows break which rule
datadocs    the validation result as one standalone Data Docs page
planning    each row's fate before sending; what the ledger already knows
results     one result row per input row; the files and the summary
files       atomic writes, one-line messages
"""
