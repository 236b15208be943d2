"""Native unit tests of app.py: python3 -m unittest"""

import unittest

from agad_sdk import Config, ConfigError
from app import Module


def module(**config):
    return Module(Config([(k, str(v)) for k, v in config.items()], Module.KEYS))


class ModuleTest(unittest.TestCase):
    def test_raised_once_and_cleared_once(self):
        m = module(threshold=80, raise_after=2)
        sent = []
        for i, v in enumerate([90, 95, 99, 50, 50, 50]):
            sent += [(i, a.raised) for a in m.observe(i * 1000, v).alarms]
        self.assertEqual(sent, [(1, True), (5, False)])

    def test_unknown_keys_and_bad_values_are_refused(self):
        with self.assertRaisesRegex(ConfigError, 'unknown config key "treshold"'):
            module(treshold=1)
        with self.assertRaisesRegex(ConfigError, 'threshold: "101" is not between 0 and 100'):
            module(threshold=101)


if __name__ == "__main__":
    unittest.main()
