"""``python -m resnetlab.config``: print ``docs/configuration.md``, the fields' reference, from their declarations."""

from .fields import reference

print(reference(), end="")
