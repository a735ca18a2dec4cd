"""foveal: inline visual inspection that reasons in pixel space.

The core package the services share. Dependencies point one way: `domain` and `errors` import
nothing of foveal; the rest of the core imports them; services and Triton models import the core.
Run `foveal --help` for the command line.
"""

__version__ = "0.1.0"
