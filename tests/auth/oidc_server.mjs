// A real OpenID Connect authorization server for the authorization tests: the npm package
// oidc-provider (installed by scripts/oidc_provider.sh), issuing client-credentials access tokens
// for a chosen resource (audience) and scopes.
//
//   OIDC_PROVIDER_DIR=.cache/oidc-provider-<v> node tests/auth/oidc_server.mjs
//
// Prints one JSON line {"issuer", "other_issuer", "admin"} once listening, then serves:
// - the main issuer on 127.0.0.1:<port> (discovery, JWKS, token, introspection);
// - a second issuer on another port that signs with the SAME keys (a token with a valid signature
//   from the wrong issuer);
// - POST <admin>/rotate: replaces the signing key (a new kid) on both issuers.
// Clients (secret "secret"): "jwt-client" gets JWT access tokens (600 s), "short-client" JWTs that
// expire in 3 s, "opaque-client" opaque ones (checked by introspection), "rs" may introspect.
import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.env.OIDC_PROVIDER_DIR;
if (!dir) throw new Error('OIDC_PROVIDER_DIR is not set');
const { default: Provider } = await import(
  pathToFileURL(path.join(dir, 'node_modules', 'oidc-provider', 'lib', 'index.js')).href
);

const SCOPES = 'autonomy:read autonomy:operate payments:read payments:write sandbox:faults';
const TTL_S = Number(process.env.OIDC_ACCESS_TOKEN_TTL_S || 600);
const SHORT_TTL_S = 3; // "short-client": tokens that expire while a test watches

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomBytes(6).toString('hex'), use: 'sig', alg: 'RS256' };
}

function makeProvider(issuer, key) {
  const provider = new Provider(issuer, {
    clients: [
      { client_id: 'jwt-client', client_secret: 'secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [] },
      { client_id: 'opaque-client', client_secret: 'secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [] },
      { client_id: 'short-client', client_secret: 'secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [] },
      { client_id: 'rs', client_secret: 'secret', grant_types: [], redirect_uris: [], response_types: [] },
    ],
    jwks: { keys: [key] },
    cookies: { keys: ['test-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource, client) => ({
          scope: SCOPES,
          audience: resource,
          accessTokenTTL: client.clientId === 'short-client' ? SHORT_TTL_S : TTL_S,
          accessTokenFormat: client.clientId === 'opaque-client' ? 'opaque' : 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  provider.proxy = false;
  return provider;
}

function listen(handler) {
  return new Promise((resolve) => {
    const server = http.createServer((req, res) => handler(req, res));
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

let key = newKey();
const current = {};
const main = await listen((req, res) => current.main(req, res));
const other = await listen((req, res) => current.other(req, res));
const issuer = `http://127.0.0.1:${main.address().port}`;
const otherIssuer = `http://127.0.0.1:${other.address().port}`;
function build() {
  current.main = makeProvider(issuer, key).callback();
  current.other = makeProvider(otherIssuer, key).callback();
}
build();

const admin = await listen((req, res) => {
  if (req.method === 'POST' && req.url === '/rotate') {
    key = newKey();
    build();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid: key.kid }));
    return;
  }
  res.writeHead(404);
  res.end();
});

process.stdout.write(
  JSON.stringify({ issuer, other_issuer: otherIssuer, admin: `http://127.0.0.1:${admin.address().port}`, kid: key.kid }) + '\n',
);
process.on('SIGTERM', () => process.exit(0));
