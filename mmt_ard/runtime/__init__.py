"""What a run needs from the processes it runs in, for training and evaluation alike: which multi-process setup is
really running, CPU (gloo) process groups and FSDP2 on CPU (`distributed`), and preemption signals with their
requeue exit status (`preemption`)."""
