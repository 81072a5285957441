# Tests talk to real processes: dnsmasq, named and BEAM nodes in their own OS
# processes. Each test module starts and stops what it uses.
ExUnit.start(capture_log: true)
