"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix: printed as `error: <problem> (<fix>)`, exit code 2."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)
