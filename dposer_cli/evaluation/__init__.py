"""The paper's evaluations (`dposer benchmark`), calling the tasks directly."""
