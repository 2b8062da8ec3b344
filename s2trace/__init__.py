"""s2trace: Arm64 stage-2 descriptors and pKVM page ownership as data.

Data flows one way: bytes -> descriptors -> mappings -> ownership; trace lines -> events ->
transitions -> ownership timeline -> queries and plots.  Sub-packages:

* :mod:`s2trace.arch` -- the Arm architecture (geometry, registers, descriptor schemas);
* :mod:`s2trace.pkvm` -- pKVM encodings (annotation profiles, states, transition rules);
* :mod:`s2trace.decode` -- the two decoding engines (Construct and numpy) and typed records;
* :mod:`s2trace.io` -- dump sources (raw, ELF cores, region lists);
* :mod:`s2trace.walk` -- page-table walks into ownership maps;
* :mod:`s2trace.trace` -- trace readers, recipes, replay and queries;
* :mod:`s2trace.cli` -- the command line, a thin layer over all of the above.
"""

__version__ = "0.1.0"
