"""Durable state of the control plane behind one interface (see base.Store)."""

from control_plane.store.base import Store

__all__ = ["Store"]
