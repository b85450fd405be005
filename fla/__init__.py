"""fla: FLA's public API (same import paths, names, arguments and layouts), backed by flagen's
generated kernels."""

__version__ = "0.1.0"
