"""Subcommands of ``mpt-deblur``: each module defines NAME, HELP, add_arguments and run."""
