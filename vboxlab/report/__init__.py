"""Reports: pictures and files written next to the test results."""
