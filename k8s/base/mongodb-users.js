// MongoDB's application users, run by the mongodb-users Job (mongodb.yaml) with mongosh.
// Logs in as the root user (MONGO_INITDB_ROOT_* from the mongodb-auth Secret) and makes every user
// below exist with exactly these roles and the password in its variable (from the same Secret).
// Safe to run again: an existing user gets its password and roles reset, so a new password in
// k8s/base/secrets/ takes effect on the next apply.
//
// Least privilege: the consumer may write the vote log and create its indexes (readWrite on
// bandvote); the logs API only reads it (read on bandvote). Neither has any role elsewhere.
// USERS is plain JSON (k8s/tests checks these roles).
const USERS = [
  {"user": "consumer", "passwordEnv": "MONGO_CONSUMER_PASSWORD", "roles": [{"role": "readWrite", "db": "bandvote"}]},
  {"user": "logs-reader", "passwordEnv": "MONGO_READER_PASSWORD", "roles": [{"role": "read", "db": "bandvote"}]}
];

const env = process.env;
for (const name of ["MONGODB_ADDRESS", "MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"]) {
  if (!env[name]) throw new Error(`${name} is not set`);
}

// MongoDB may still be starting (first apply): try for five minutes, then let the Job retry.
let admin;
for (let attempt = 1; ; attempt++) {
  try {
    admin = new Mongo(env.MONGODB_ADDRESS).getDB("admin");
    admin.auth(env.MONGO_INITDB_ROOT_USERNAME, env.MONGO_INITDB_ROOT_PASSWORD);
    break;
  } catch (error) {
    if (attempt >= 60) throw error;
    print(`waiting for MongoDB at ${env.MONGODB_ADDRESS}: ${error.message}`);
    sleep(5000);
  }
}

for (const { user, passwordEnv, roles } of USERS) {
  const pwd = env[passwordEnv];
  if (!pwd) throw new Error(`${passwordEnv} is not set`);
  if (admin.getUser(user)) {
    admin.updateUser(user, { pwd, roles });
    print(`updated ${user}: ${JSON.stringify(roles)}`);
  } else {
    admin.createUser({ user, pwd, roles });
    print(`created ${user}: ${JSON.stringify(roles)}`);
  }
}
