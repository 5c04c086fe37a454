"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix: printed as `error: <problem> (<fix>)`, exit code 2."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)


class ModelNotFound(FileNotFoundError):
    """A model file or pack is missing; the message says what, where it looked, and how to get it."""

    def __init__(self, missing: str, looked_in: list[str] | tuple[str, ...], fix: str) -> None:
        self.missing = missing
        self.looked_in = list(looked_in)
        self.fix = fix
        super().__init__(f"{missing} not found; looked in: {', '.join(self.looked_in)}. Fix: {fix}")

    def user_error(self, context: str) -> UserError:
        """The one line a stage's preflight shows the user: what, where it looked, how to get it."""
        return UserError(f"{context}: {self.missing} not found (looked in {', '.join(self.looked_in)})", self.fix)
