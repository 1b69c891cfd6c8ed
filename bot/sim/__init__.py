"""Local simulators tunnelwarden can run against instead of real services.

ARM simulator modules (import them directly; this package stays import-light):

- :mod:`bot.sim.arm` - aiohttp ARM front end: ``create_app``, ``start_arm_sim``, ``main``
- :mod:`bot.sim.world` - resources, devices and tunnel state (``World``)
- :mod:`bot.sim.client` - ``SimCredential`` and ``sim_network_client`` for the real SDK
- :mod:`bot.sim.control` - the ``/_sim/`` control API
- :mod:`bot.sim.seed` - seed-file schema (TOML/JSON)
- :mod:`bot.sim.faults`, :mod:`bot.sim.lro`, :mod:`bot.sim.metering` - faults, LROs, counters
"""
