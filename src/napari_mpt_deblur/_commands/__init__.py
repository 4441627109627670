"""Subcommands of ``mpt-deblur``: each module defines NAME, HELP, add_arguments and run."""

# One wording for every --device option, so they all promise the behaviour cli.main enforces.
DEVICE_HELP = (
    "auto, cpu, cuda, cuda:N or mps; auto picks CUDA, then MPS, then the CPU, while a named "
    "device that is not available here is an error"
)
