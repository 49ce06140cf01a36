"""smbd_py benchmarks, side by side with Samba.

This package owns the benchmark command (``bench/run``): it starts smbd_py and two Samba
smbd instances (kernel oplocks = yes / no) on loopback addresses over one shared directory
with one account, runs every measurement alternately against each of them, and writes a
table of medians and smbd_py/Samba ratios with the machine description to bench/results/.
"""
