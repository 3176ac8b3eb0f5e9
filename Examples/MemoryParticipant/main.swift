print("memory-participant")
