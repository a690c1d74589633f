"""mxbench: the mxgate benchmark suite (see docs/benchmarks.md).

Modules:
  procs    -- CPU seconds and memory of a process tree, read from /proc
  systems  -- the things under test and around them: smtp-sink, unbound, Postfix, mxgate
  latency  -- a paced SMTP client that times end-of-DATA -> 250 (runs as a subprocess)
  tlssink  -- a counting SMTP sink that offers STARTTLS (runs as a subprocess)
  trials   -- one measured trial and the experiments built from trials
  profile  -- fsyncs per message and mxgate's CPU profile, with perf
  report   -- tables, medians and ratios

It does NOT build mxgate (bench/run.sh can), install packages, or tune the machine.
"""
