#ifndef DTX_CSQLITE_SHIM_H
#define DTX_CSQLITE_SHIM_H
// The session extension (changesets) backs the SQLite resource manager's durable
// prepare; Debian's libsqlite3 is built with it, but its declarations are only
// visible with these defined.
#define SQLITE_ENABLE_SESSION 1
#define SQLITE_ENABLE_PREUPDATE_HOOK 1
#include <sqlite3.h>
#endif
