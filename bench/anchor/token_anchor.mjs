// The reference token endpoint for bench/token_bench.py: node-oidc-provider (npm `oidc-provider`)
// with one confidential client for client_credentials, issuing ES256-signed JWT access tokens
// (RFC 9068) through resource indicators, the same kind of token identity issues.
//
//   node bench/anchor/token_anchor.mjs '{"client_id": "svc", "client_secret": "...",
//                                        "scope": "points:credit", "audience": "kizuna"}'
//
// Listens on 127.0.0.1, port 0, and prints one JSON line once it serves: {"port": N, "issuer": ...}.
// Ends on SIGTERM or SIGINT.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const spec = JSON.parse(process.argv[2] ?? '{}');
for (const name of ['client_id', 'client_secret', 'scope', 'audience']) {
  if (typeof spec[name] !== 'string' || !spec[name]) {
    console.error(`token_anchor: missing "${name}" in the JSON argument`);
    process.exit(2);
  }
}

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'ES256', use: 'sig' };
const resource = `urn:kizuna:${spec.audience}`;

const server = createServer();
server.keepAliveTimeout = 65_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: spec.client_id,
        client_secret: spec.client_secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'ES256', // the only key is an ES256 one
        scope: spec.scope,
      },
    ],
    jwks: { keys: [signingKey] },
    scopes: spec.scope.split(' '),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A token request without `resource` gets the one resource server there is.
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          if (indicator !== resource) throw new Provider.errors.InvalidTarget();
          return {
            scope: spec.scope,
            audience: spec.audience,
            accessTokenTTL: 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
  });
  provider.proxy = false;
  server.on('request', provider.callback());
  console.log(JSON.stringify({ port, issuer }));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
