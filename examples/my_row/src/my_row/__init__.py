"""An example ichbench row from outside the package: `MyAE` (rows.py) on its network (nets.py)."""
