"""The differential suites: the daemon against kernel macvlan, scenario by scenario."""
