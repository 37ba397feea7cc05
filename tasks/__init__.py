"""tidegate's stages: one module per stage or domain (spec, staging, cluster, deploy, smoke,
load, observe, verify, report, gate), each a set of plain typed functions with a thin Prefect
task wrapper."""
