"""The careful credentials-file editor: a line-level INI model (inifile), the edit operations
(edit: plant, replace, unplant exactly one section, every other byte kept), safe atomic filesystem
access as root (safefs: no symlink followed, owner and mode kept), `~/.aws/config` conflict checks
(awsconfig), and the errors they raise (errors)."""
