"""Imported last by multiprocessing's forkserver: freeze everything the preloaded modules made.

Children are forked from the forkserver and share its memory copy-on-write. Python's cyclic garbage
collector walks (and so writes to) every tracked object it knows of, which would copy each page of
the preloaded modules into every child. Frozen objects are never walked: they stay shared. (The
zygote, the default, freezes its own.)
"""

import gc

gc.freeze()
