// DTXSQLite: the SQLite resource manager.
