"""virtio for the frontends: vnet headers and software segmentation, split virtqueues, and
the vhost-user protocol as a state machine.

Sans-I/O like :mod:`pymacvtap.core`: nothing here opens, reads, maps or polls anything
(``tests/virtio/test_no_io.py`` checks it).  Guest memory arrives as buffers, fds as
numbers, and what must happen outside (send a reply, signal an eventfd, map a region, close
an fd) comes back as actions for :mod:`pymacvtap.frontends.vhost_user` to carry out.

The engine never needs any of it: only frontends import this package, and :mod:`pymacvtap.core`
never imports it.  The one thing taken from core is the frame type (``core.frame``), which
carries the vnet header through the engine.
"""
