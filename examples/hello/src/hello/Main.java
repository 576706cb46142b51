/*
 * The bundled example app: a tiny HTTP server that reports what the image gave it.
 *
 * It exists so that the README and the end-to-end tests have something real to build and boot,
 * and so that a test can ask the running guest about itself: which environment's variables
 * reached it, which user it runs as, whether its root file system is read-only, and whether its
 * exit status comes back out of the VM.
 *
 *   GET /             200 "hello from imagebuilder: GREETING=<value or unset>"
 *   GET /health       200 "ok"
 *   GET /info         200 JSON: user, uid, env, greeting, root_writable, root_ro, tmp_writable, java
 *   GET /exit?code=N  200, then System.exit(N)
 *
 * Listens on $PORT (default 8080). Uses only the JDK (module jdk.httpserver); builds with
 * javac --release 17.
 */
package hello;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.concurrent.Executors;

public final class Main {
    private Main() {
    }

    public static void main(String[] args) throws IOException {
        int port = 8080;
        String portEnv = System.getenv("PORT");
        if (portEnv != null && !portEnv.isEmpty()) {
            port = Integer.parseInt(portEnv.trim());
        }
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 0);
        server.createContext("/", Main::handle);
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("hello: listening on port " + server.getAddress().getPort());
        System.out.flush();
    }

    private static void handle(HttpExchange exchange) throws IOException {
        try {
            String method = exchange.getRequestMethod();
            if (!method.equals("GET") && !method.equals("HEAD")) {
                send(exchange, 405, "text/plain", "method not allowed\n");
                return;
            }
            URI uri = exchange.getRequestURI();
            switch (uri.getPath()) {
                case "/":
                    send(exchange, 200, "text/plain",
                            "hello from imagebuilder: GREETING=" + orElse(System.getenv("GREETING"), "unset") + "\n");
                    break;
                case "/health":
                    send(exchange, 200, "text/plain", "ok");
                    break;
                case "/info":
                    send(exchange, 200, "application/json", info());
                    break;
                case "/exit":
                    exit(exchange, uri.getRawQuery());
                    break;
                default:
                    send(exchange, 404, "text/plain", "not found\n");
            }
        } finally {
            exchange.close();
        }
    }

    private static void exit(HttpExchange exchange, String query) throws IOException {
        int code = 0;
        if (query != null) {
            for (String pair : query.split("&")) {
                if (pair.startsWith("code=")) {
                    try {
                        code = Integer.parseInt(pair.substring(5));
                    } catch (NumberFormatException e) {
                        send(exchange, 400, "text/plain", "code must be an integer\n");
                        return;
                    }
                }
            }
        }
        final int status = code;
        send(exchange, 200, "text/plain", "exiting with " + status + "\n");
        Thread exiter = new Thread(() -> {
            try {
                Thread.sleep(200);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            System.out.println("hello: exiting with " + status);
            System.out.flush();
            System.exit(status);
        });
        exiter.setDaemon(false);
        exiter.start();
    }

    private static String info() {
        return "{"
                + "\"user\": " + str(System.getProperty("user.name")) + ", "
                + "\"uid\": " + uid() + ", "
                + "\"env\": " + str(System.getenv("IMAGEBUILDER_ENV")) + ", "
                + "\"greeting\": " + str(System.getenv("GREETING")) + ", "
                + "\"root_writable\": " + canCreateFileIn("/") + ", "
                + "\"root_ro\": " + rootReadOnly() + ", "
                + "\"tmp_writable\": " + canCreateFileIn("/tmp") + ", "
                + "\"java\": " + str(System.getProperty("java.version"))
                + "}\n";
    }

    /** The real uid from the "Uid:" line of /proc/self/status, or "null" if unreadable. */
    private static String uid() {
        try {
            for (String line : Files.readAllLines(Paths.get("/proc/self/status"), StandardCharsets.UTF_8)) {
                if (line.startsWith("Uid:")) {
                    return line.substring(4).trim().split("\\s+")[0];
                }
            }
        } catch (IOException | RuntimeException e) {
            // fall through
        }
        return "null";
    }

    /** Whether the last mount of "/" in /proc/mounts (the one in effect) has the "ro" option. */
    private static boolean rootReadOnly() {
        boolean ro = false;
        try {
            List<String> lines = Files.readAllLines(Paths.get("/proc/mounts"), StandardCharsets.UTF_8);
            for (String line : lines) {
                String[] fields = line.split(" ");
                if (fields.length >= 4 && fields[1].equals("/")) {
                    ro = List.of(fields[3].split(",")).contains("ro");
                }
            }
        } catch (IOException e) {
            return false;
        }
        return ro;
    }

    private static boolean canCreateFileIn(String dir) {
        Path probe = Paths.get(dir, ".hello-write-probe-" + ProcessHandle.current().pid());
        try {
            Files.deleteIfExists(probe);
            Files.createFile(probe);
            Files.delete(probe);
            return true;
        } catch (IOException | SecurityException e) {
            return false;
        }
    }

    private static String orElse(String value, String fallback) {
        return value == null ? fallback : value;
    }

    /** A JSON string literal, or null. */
    private static String str(String value) {
        if (value == null) {
            return "null";
        }
        StringBuilder out = new StringBuilder("\"");
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            switch (c) {
                case '"':
                    out.append("\\\"");
                    break;
                case '\\':
                    out.append("\\\\");
                    break;
                case '\n':
                    out.append("\\n");
                    break;
                case '\r':
                    out.append("\\r");
                    break;
                case '\t':
                    out.append("\\t");
                    break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"').toString();
    }

    private static void send(HttpExchange exchange, int status, String type, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", type + "; charset=utf-8");
        boolean head = exchange.getRequestMethod().equals("HEAD");
        exchange.sendResponseHeaders(status, head ? -1 : bytes.length);
        if (!head) {
            try (OutputStream os = exchange.getResponseBody()) {
                os.write(bytes);
            }
        }
    }
}
