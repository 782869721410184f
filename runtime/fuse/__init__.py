"""The fpol FUSE daemon over raw /dev/fuse (no libfuse: it can neither send fuse-bpf's
ioctl replies nor, in 3.14, use kernel passthrough).

protocol  the wire format: structures, opcodes, INIT negotiation, reply builders
device    the /dev/fuse connection: requests in, replies out, passthrough ioctls
inodes    nodeid <-> backing object (O_PATH descriptors), classes, lookup counts, handles
enforce   the policy decision for each request, handlers for userspace, the audit log
server    the dispatcher: one handler per opcode, passthrough to the backing directory
fusebpf   the fuse-bpf side (mount options, lookup replies with entries, filter requests);
          needs a fuse-bpf kernel to run, unit-tested byte for byte against the spec
"""
