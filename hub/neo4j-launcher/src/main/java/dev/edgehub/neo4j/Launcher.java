package dev.edgehub.neo4j;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.neo4j.cli.ExecutionContext;
import org.neo4j.commandline.admin.security.SetInitialPasswordCommand;
import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.QueryExecutionException;
import org.neo4j.io.ByteUnit;
import picocli.CommandLine;

/**
 * A real Neo4j Community DBMS with its Bolt connector on 127.0.0.1, for edgehub's tests and local runs.
 *
 * <pre>
 * NEO4J_PASSWORD=... java -Xmx512m -cp 'lib/*' dev.edgehub.neo4j.Launcher --home DIR [--port 7687]
 *     [--pagecache-mb 128]
 * </pre>
 *
 * <p>User {@code neo4j} gets the password from {@code NEO4J_PASSWORD}: written as the initial password
 * before the first start (so Bolt never accepts the default one), and set again when an existing data
 * dir starts (the launcher's owner decides the password, also for a data dir made with another one). Prints {@code edgehub-neo4j
 * ready bolt://127.0.0.1:PORT} once Bolt accepts authenticated sessions; SIGTERM shuts the DBMS down
 * cleanly (checkpoint, then exit). Exit status 2: bad arguments; 3: the port is in use; 1: other
 * start failure (the message is on stderr, Neo4j's own log in DIR/logs/debug.log).
 */
public final class Launcher {
    private Launcher() {}

    public static void main(String[] args) throws InterruptedException {
        Path home = null;
        int port = BoltConnector.DEFAULT_PORT;
        long pagecacheMb = 128;
        for (int i = 0; i < args.length; i++) {
            String value = i + 1 < args.length ? args[i + 1] : null;
            switch (args[i]) {
                case "--home" -> home = Path.of(require(value, "--home")).toAbsolutePath();
                case "--port" -> port = Integer.parseInt(require(value, "--port"));
                case "--pagecache-mb" -> pagecacheMb = Long.parseLong(require(value, "--pagecache-mb"));
                default -> fail(2, "unknown argument " + args[i]);
            }
            i++;
        }
        String password = System.getenv("NEO4J_PASSWORD");
        if (home == null) {
            fail(2, "--home DIR is required");
        }
        if (password == null || password.length() < 8) {
            fail(2, "NEO4J_PASSWORD must be set to at least 8 characters");
        }
        DatabaseManagementService dbms = start(home, port, pagecacheMb, password);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            dbms.shutdown();
            System.out.println("edgehub-neo4j stopped");
            System.out.flush();
            stopped.countDown();
        }, "edgehub-neo4j-shutdown"));
        System.out.println("edgehub-neo4j ready bolt://127.0.0.1:" + port);
        System.out.flush();
        stopped.await();
    }

    private static DatabaseManagementService start(Path home, int port, long pagecacheMb, String password) {
        try {
            boolean fresh = !Files.exists(home.resolve("data/databases/system"));
            if (fresh) {
                setInitialPassword(home, password);
            }
            DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                    .setConfig(BoltConnector.enabled, true)
                    .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                    .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                    .setConfig(GraphDatabaseSettings.auth_enabled, true)
                    .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(pagecacheMb))
                    .setConfig(GraphDatabaseSettings.udc_enabled, false)
                    .setConfig(GraphDatabaseSettings.keep_logical_logs, "2 files")
                    .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(64))
                    .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                    // Bolt's default 2 x 5 s graceful quiet period would make every stop take 10 s.
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(5))
                    .build();
            if (!dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).isAvailable(TimeUnit.MINUTES.toMillis(2))) {
                dbms.shutdown();
                fail(1, "the neo4j database did not become available within 2 minutes");
            }
            if (!fresh) {  // the first Cypher query of a cold JVM takes seconds: only when needed
                applyPassword(dbms, password);
            }
            return dbms;
        } catch (RuntimeException e) {
            String why = causes(e);
            fail(why.contains("already in use") ? 3 : 1, "edgehub-neo4j failed to start: " + why);
            throw e;
        }
    }

    /** Make {@code password} neo4j's, also when the data dir was created with another one. */
    private static void applyPassword(DatabaseManagementService dbms, String password) {
        try {
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                    "ALTER USER neo4j SET PLAINTEXT PASSWORD $password CHANGE NOT REQUIRED",
                    Map.of("password", password));
        } catch (QueryExecutionException e) {
            if (!String.valueOf(e.getMessage()).contains("Old password and new password cannot be the same")) {
                throw e;
            }
        }
    }

    /** What {@code neo4j-admin dbms set-initial-password} does: data/dbms/auth.ini before the first start. */
    private static void setInitialPassword(Path home, String password) {
        var command = new SetInitialPasswordCommand(new ExecutionContext(home, home.resolve("conf")));
        int status = new CommandLine(command).execute(password);
        if (status != 0) {
            fail(1, "could not set the initial password (status " + status + ")");
        }
    }

    private static String causes(Throwable e) {
        StringBuilder out = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) {
            out.append(out.length() == 0 ? "" : ": ").append(t.getClass().getSimpleName())
                    .append(" ").append(t.getMessage());
        }
        return out.toString();
    }

    private static String require(String value, String flag) {
        if (value == null) {
            fail(2, flag + " needs a value");
        }
        return value;
    }

    private static void fail(int status, String message) {
        System.err.println(message);
        System.err.flush();
        System.exit(status);
    }
}
