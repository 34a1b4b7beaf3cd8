"""Testing code that talks memif: the pytest plugin (:mod:`memif_aio.testing.plugin`, loaded
automatically through the ``pytest11`` entry point) and a runner for DPDK's ``dpdk-testpmd`` as
a real peer (:mod:`memif_aio.testing.testpmd`). Importing this package imports neither."""
