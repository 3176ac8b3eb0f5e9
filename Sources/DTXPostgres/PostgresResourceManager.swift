// DTXPostgres: the PostgreSQL resource manager.
