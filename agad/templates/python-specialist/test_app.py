"""Native unit tests of app.py: python3 -m unittest"""

import unittest

from app import diagnose


class DiagnoseTest(unittest.TestCase):
    def test_cause_follows_the_limit(self):
        self.assertIn(("cause", "memory-high"), diagnose(95, 100, 90.0).facts)
        self.assertIn(("cause", "memory-normal"), diagnose(50, 100, 90.0).facts)
        self.assertIn(("used_percent", "0.0"), diagnose(0, 0, 90.0).facts)


if __name__ == "__main__":
    unittest.main()
