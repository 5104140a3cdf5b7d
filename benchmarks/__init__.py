"""The benchmark harness behind `make bench`: every benchmark with its ceiling measured in the same run."""
