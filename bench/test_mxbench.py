"""Unit tests for the benchmark harness's pure parts: `python3 -m unittest bench/test_mxbench.py`.

They check the arithmetic and parsing that every reported number goes through; the
process-running parts are exercised by `bench/run.sh --quick`.
"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mxbench import procs, report  # noqa: E402
from mxbench.systems import Sink  # noqa: E402
from mxbench.trials import percentile  # noqa: E402


class Goals(unittest.TestCase):
    def test_ratios_cpu_and_fsyncs_against_their_goals(self):
        summary = {
            ("mxgate", 10): {"delivered_per_s": 3500.0, "cpu_s_per_1000": 0.2, "p99_ms": 1.0},
            ("postfix", 10): {"delivered_per_s": 700.0, "p99_ms": 20.0},
            ("bound", 10): {"delivered_per_s": 17500.0},
        }
        profiles = [{"system": "mxgate", "sessions": 10, "fsyncs_per_message": 0.4}]
        table = report.goals_table(summary, [10], profiles, {}, [])
        self.assertIn("| delivered mxgate / Postfix | 10 | 5.00 | ≥ 5× | yes |", table)
        self.assertIn("| delivered mxgate / bound | 10 | 0.20 |", table)
        self.assertIn("| mxgate CPU µs / message | 10 | 200 | ≤ 250 | yes |", table)
        self.assertIn("| accept p99 mxgate / Postfix | 10 | 0.05 | ≤ 0.25 | yes |", table)
        self.assertIn("| mxgate fsyncs / message | 10 | 0.40 | ≤ 0.3 | **no** |", table)
        self.assertIn("| TLS sink: delivered mxgate / Postfix | 10 | - | ≥ 5× | - |", table)


class Percentile(unittest.TestCase):
    def test_nearest_rank_on_sorted_copy(self):
        values = [5.0, 1.0, 3.0, 2.0, 4.0]
        self.assertEqual(percentile(values, 50), 3.0)
        self.assertEqual(percentile(values, 99), 5.0)
        self.assertEqual(percentile(values, 0), 1.0)
        self.assertEqual(values[0], 5.0, "input must not be reordered")

    def test_empty_is_unmeasured(self):
        self.assertIsNone(percentile([], 99))


class SinkCounters(unittest.TestCase):
    def _sink_with(self, text):
        sink = Sink.__new__(Sink)  # no process: only the counter-file parser
        fd, sink.out_path = tempfile.mkstemp()
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, sink.out_path)
        return sink

    def test_last_complete_record_wins(self):
        sink = self._sink_with("\rsess=0 quit=0 mesg=1\rsess=1 quit=1 mesg=2\rsess=2 quit=2 mesg=20")
        self.assertEqual(sink.counters(), {"sess": 2, "quit": 2, "mesg": 20})
        self.assertEqual(sink.delivered(), 20)

    def test_tlssink_format(self):
        sink = self._sink_with("\rconn=0 tls=0 mesg=0\rconn=3 tls=2 mesg=7")
        self.assertEqual(sink.counters(), {"conn": 3, "tls": 2, "mesg": 7})

    def test_nothing_yet_is_zero(self):
        self.assertEqual(self._sink_with("").delivered(), 0)


class Summaries(unittest.TestCase):
    def row(self, system, rate, error=None, lat=(1.0,)):
        return {"system": system, "sessions": 10, "accepted_per_s": rate, "delivered_per_s": rate,
                "cpu_s_per_1000": 1.0, "peak_rss_kib": 1024, "peak_pss_kib": 512,
                "msgs_per_connection": 1.0, "latencies_ms": list(lat), "error": error}

    def test_median_ignores_failed_trials(self):
        s = report.summarise([self.row("mxgate", 100), self.row("mxgate", 300),
                              self.row("mxgate", 200), self.row("mxgate", 9999, error="boom")])
        r = s[("mxgate", 10)]
        self.assertEqual(r["delivered_per_s"], 200)
        self.assertEqual(r["errors"], ["boom"])

    def test_ratio_needs_both_sides(self):
        self.assertEqual(report.ratio(300, 100), 3.0)
        self.assertIsNone(report.ratio(None, 100))
        self.assertIsNone(report.ratio(300, 0))
        self.assertEqual(report.fmt(None), "-")

    def test_headline_shows_unmeasured_as_dash(self):
        s = report.summarise([self.row("postfix", 100), self.row("bound", 1000)])
        head, _ = report.core_tables(s, [10])
        self.assertIn("| 10 | delivered msg/s | - | - |", head)


class Procs(unittest.TestCase):
    def test_own_tree_has_cpu_and_memory(self):
        pids = procs.tree(os.getpid())
        self.assertIn(os.getpid(), pids)
        sum(range(200000))  # burn a little CPU so the counter is non-zero
        self.assertGreater(procs.cpu_seconds(pids), 0.0)
        rss, pss = procs.memory_kib([os.getpid()])
        self.assertGreater(rss, 1000)
        self.assertGreater(pss, 0)


if __name__ == "__main__":
    unittest.main()
