"""One module per audit stage; each holds plain functions a test can call without Prefect."""
