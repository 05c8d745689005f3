"""Generated test data shared by the tests and the benchmarks: images, garments, scenes, and a local
image server that stands in for remote image hosts."""
