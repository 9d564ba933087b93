from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    http_port: int = 8000
    grpc_port: int = 50050
