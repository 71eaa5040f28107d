"""Exception hierarchy: one root so the CLI can turn any user-facing failure into one message."""


class NasflowError(Exception):
    """Root of every error nasflow raises on purpose; the CLI prints its message, no traceback."""


class SpecError(NasflowError):
    """The YAML spec is malformed or fails validation (message names field path and line)."""


class PluginError(NasflowError):
    """A plugin is unknown, broken, or was given invalid options."""


class ArchError(NasflowError, ValueError):
    """An architecture string or genome is invalid; the message quotes the offending token."""


class DatasetError(NasflowError):
    """A dataset cannot be found, read or decoded."""


class DeviceError(NasflowError):
    """A device backend is unusable here or failed while measuring."""


class RegistryError(NasflowError):
    """The results registry cannot be opened, migrated, read or written."""


class SqlRefused(RegistryError):
    """A statement given to read-only SQL is not one reading statement, or reached outside the registry."""


class ExportError(NasflowError):
    """Exporting or verifying a deployable artifact failed."""


class RunInterrupted(NasflowError):
    """The run was stopped (Ctrl-C); everything recorded so far is kept and a re-run resumes."""
