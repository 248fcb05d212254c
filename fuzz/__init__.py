"""`trapvisor fuzz`: differential fuzzing of the engines (generated guests run under native, trap,
bt and vtx and compared) and of the parent partition (hostile intercept messages)."""
