"""Local backend: real fine-tuning on this machine, one OS process per job.

(stub: being built under issue #3)
"""
