// Loads the document into a fresh client through the sync handshake. Prints {ok, json}.

import { connect, options, run, synced, tripJson } from './lib.mjs'

const opts = options()

run(async () => {
  const client = connect(opts, { name: 'loader' })
  await synced(client)
  return { json: tripJson(client.doc) }
})
