"""Names of the contracts shared by the host and the jail, defined once.

The host (snf_image) and the jail (helper, tasks) both import this module.
"""

# Progress message types (the seed's JSON shapes).
MSG_INFO = "image-info"
MSG_ERROR = "image-error"
MSG_COPY_PROGRESS = "image-copy-progress"
MSG_HELPER = "image-helper"

# Subtypes of image-helper messages, as sent by the jail.
HELPER_TASK_START = "task-start"
HELPER_TASK_END = "task-end"
HELPER_WARNING = "warning"
HELPER_ERROR = "error"
HELPER_SUBTYPES = (HELPER_TASK_START, HELPER_TASK_END, HELPER_WARNING, HELPER_ERROR)

# Image formats (img_format).
FORMAT_DISKDUMP = "diskdump"
FORMAT_EXTDUMP = "extdump"
FORMAT_NTFSDUMP = "ntfsdump"
IMAGE_FORMATS = (FORMAT_DISKDUMP, FORMAT_EXTDUMP, FORMAT_NTFSDUMP)

# OS families (OSFAMILY property).
OSFAMILIES = ("linux", "windows", "windows-legacy", "freebsd", "netbsd", "openbsd")

# The jail's result channel: the only line that means success (see messages.Result).
RESULT_SUCCESS = "SUCCESS"
RESULT_ERROR_PREFIX = "ERROR:"

# Kernel command line flags the jail's init looks for.
CMDLINE_ACTIVATE = "snf_image_activate_helper"
CMDLINE_DEBUG = "snf_image_debug_helper"

# Serial ports inside the jail (qemu -serial order).
TTY_CONSOLE = "/dev/ttyS0"
TTY_RESULT = "/dev/ttyS1"
TTY_PROGRESS = "/dev/ttyS2"
TTY_DEBUG = "/dev/ttyS3"

# virtio-blk serial numbers by which the jail finds its disks (/sys/block/vdX/serial).
SERIAL_HELPER_ROOT = "snf-helper-root"
SERIAL_RULES = "snf-rules"
SERIAL_DISK_PREFIX = "snf-disk"  # + Ganeti disk index: snf-disk0, ... (rules.disk_serial)

# The rules disk: UTF-8 JSON padded with NUL bytes to a 512-byte multiple.
RULES_MAX_BYTES = 64 * 1024 * 1024

# Hostile-input limits for what the jail sends back.
HELPER_MAX_LINE = 4096
HELPER_MAX_LINES = 2000
HELPER_MAX_LINES_PER_SECOND = 200
RESULT_MAX_BYTES = 8192
RESULT_MAX_REASON = 1000  # characters of the reason after ERROR:, as the jail writes it
