"""Deprecated: moved to :mod:`evit_mm.mm.weights`; this path will be removed in the next release."""
from evit_mm.mm._moved import alias_old_path

alias_old_path(__name__, 'evit_mm.mm.weights')
