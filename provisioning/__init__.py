"""Provisioning: the station's small CA and broker configuration (:mod:`provisioning.pki`,
:mod:`provisioning.broker`) and both ends of the USB-serial provisioning protocol."""
