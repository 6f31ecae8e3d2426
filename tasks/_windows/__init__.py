"""Windows guests: what the Windows tasks share, by concern.

- :mod:`.checks`: what the registry says, and whether the image can be
  deployed (NT version against OSFAMILY, sysprep state, names Windows accepts);
- :mod:`.ini`: Windows text files (UTF-16/UTF-8/cp1252, CRLF) and the INI
  editor for sysprep.inf and CmdLines.txt (comments and layout kept);
- :mod:`.unattend`: the unattend.xml editor (lxml; the
  ``urn:schemas-microsoft-com:unattend`` default namespace and the ``wcm``
  prefix Windows setup requires are kept);
- :mod:`.scripts`: the first-boot scripts, as text;
- :mod:`.guest`: reading and writing the mounted image (names matched
  without case, as Windows does), its hives, its answer file and the
  SetupComplete.cmd hook.

The editors are pure functions (text or bytes in and out), unit-tested
without a VM; the tasks (InstallUnattend, DisableRemoteDesktopConnections,
FilesystemResizeAfterUmount, and the Windows handlers of the shared tasks)
do the I/O through :mod:`.guest`.

What runs in the guest at first boot, all under ``%WINDIR%\\SnfScripts``:

- ``ChangePassword.cmd`` (specialize pass / CmdLines.txt): runs
  ``SetPassword.vbs``, which reads the password from the file ``Password``
  (UTF-16), overwrites and deletes that file, and sets it for each user
  through ADSI -- the password is never on any command line -- then
  ``net user "<name>" /ACTIVE:YES /EXPIRES:NEVER /PASSWORDREQ:YES``.
- ``ExtendFilesystem.txt``: the diskpart script of the online resize
  (``exit`` unless FilesystemResizeMounted writes one).
- ``SnfSetupComplete.cmd``: called first from
  ``%WINDIR%\\Setup\\Scripts\\SetupComplete.cmd`` (the image's own commands
  there are kept after our block): restores Remote Desktop, overwrites
  and deletes what may hold secrets (password file, answer files), then the
  caller removes ``SnfScripts``.
"""
