"""Kernel sources shared by several backends (device-neutral; no tile choices here)."""
