"""The garbage collector's settings for a gateway process: few, short pauses while it holds thousands of runs."""

from __future__ import annotations

import gc

#: Allocations between two young collections (CPython's default is 700). Under load the default
#: collects every millisecond or two, so the objects of every request still waiting on Redis or
#: the upstream survive two collections and are promoted to the old generation; promoted objects
#: soon make up a quarter of it, and that starts a full collection, which walks every object of
#: every held run: measured holding 5,000 runs under intake, a full collection every 2-3 s, each
#: pausing the event loop 100-400 ms on this (shared, loaded) machine (#18). With 50,000 (a young
#: collection every 0.3 s at 1,500 requests/s) a request's objects are gone before the next one:
#: in the same measurement no full collection, and the collector's time cut from 3.4 s to 1.1 s
#: (10,000 was tried too: as many ms per young collection, three times the total).
YOUNG = 50_000
#: Young collections per middle one, middle per old one (CPython's defaults: 10 and 10). CPython
#: also runs the old one only once the objects promoted since the last make up 25 % of it.
MIDDLE = 20
OLD = 100


def tune() -> None:
    """Set the thresholds above, and exempt what exists now from every future collection.

    Called once the app is built and before it serves: modules, classes and configuration live
    as long as the process, so walking them in every full collection is pure cost (``gc.freeze``).
    """
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
