"""Unit tests of agad_sdk.py, natively: python3 -m unittest discover python"""

import unittest

from agad_sdk import Alarms, Check, Comparison, Config, ConfigError, Window


class ConfigTest(unittest.TestCase):
    def test_common_keys_period_and_unknown(self):
        config = Config([("threshold", " 75 "), ("period", "1s"), ("raise_after", "2")], ["threshold"])
        self.assertEqual(config.number("threshold", 90.0, 0, 100), 75.0)
        self.assertEqual(config.common().raise_after, 2)
        with self.assertRaisesRegex(ConfigError, 'unknown config key "treshold"'):
            Config([("treshold", "1")], ["threshold"])
        with self.assertRaisesRegex(ConfigError, 'unknown config key "window_secs"'):
            Config([("window_secs", "1")], ["count"], strict=True)

    def test_errors_name_key_and_value(self):
        config = Config([("threshold", "abc"), ("clear_after", "0")], ["threshold"])
        with self.assertRaisesRegex(ConfigError, 'threshold: "abc" is not a number'):
            config.number("threshold", 1.0)
        with self.assertRaisesRegex(ConfigError, 'clear_after: "0" must be at least 1'):
            config.common()
        with self.assertRaisesRegex(ConfigError, "given more than once"):
            Config([("threshold", "1"), ("threshold", "2")], ["threshold"])


class AlarmsTest(unittest.TestCase):
    def test_raise_and_clear_with_hysteresis(self):
        alarms = Alarms(2, 2)
        check = Check("mem.high", "mem.used-percent", Comparison.ABOVE, 90.0, unit="%")
        values = [95, 50, 95, 95, 99, 50, 95, 50, 50]
        sent = [(i, a.raised) for i, v in enumerate(values) if (a := alarms.check(check, v))]
        self.assertEqual(sent, [(3, True), (8, False)])

    def test_restart_keeps_the_raised_set(self):
        first = Alarms(1, 1)
        check = Check("k", "m", Comparison.BELOW, 1.0)
        self.assertTrue(first.check(check, 0.0).raised)
        again = Alarms(1, 1)
        again.restore(first.encode())
        self.assertIsNone(again.check(check, 0.0))
        self.assertFalse(again.check(check, 5.0).raised)


class WindowTest(unittest.TestCase):
    def test_one_summary_per_window_time_weighted(self):
        window = Window(10)
        for t, v in [(0, 10.0), (4000, 20.0), (10000, 30.0)]:
            window.record(t, "m", "", "%", v)
        (s,) = window.take_due(10000)
        self.assertEqual((s.min, s.max, s.last, s.count, s.coverage), (10.0, 20.0, 20.0, 2, 1.0))
        self.assertAlmostEqual(s.mean, (10 * 4 + 20 * 6) / 10)
        self.assertEqual((s.window_start_ms, s.window_end_ms), (0, 10000))
        self.assertEqual(window.take_due(15000), [])


if __name__ == "__main__":
    unittest.main()
