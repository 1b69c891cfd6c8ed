"""Drivers for the on-premises end of a tunnel: SonicWall, Barracuda, KEMP, RRAS.

Small clients with plain async methods, raising :class:`playbooks.devices.common.DeviceError`
(``transient`` true or false) on failure. The playbooks build on them; see ``docs/devices.md``.

- :mod:`playbooks.devices.sonicwall` - SonicOS 7 REST API (single session, pending + commit)
- :mod:`playbooks.devices.barracuda` - CloudGen Firewall REST API (box/service state, restarts)
- :mod:`playbooks.devices.kemp` - LoadMaster API (real servers: state, enable, disable)
- :mod:`playbooks.devices.rras` - Windows RRAS over PowerShell remoting (pypsrp, JEA)
"""
